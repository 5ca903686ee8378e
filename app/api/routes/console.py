"""The console (SPEC §9): the static files in app/console, served at /ui/ behind a strict
Content-Security-Policy. The files need no token; every call they make to the JSON API carries the
bearer token the person typed (kept in the browser's session storage, never in a cookie).

Only files that exist in app/console when the module is imported are served (a fixed table, so no
request path ever reaches the file system), each with `no-cache`: a browser revalidates with the
ETag and an upgraded relay's files are picked up at once.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse, RedirectResponse

CONSOLE_DIR = Path(__file__).resolve().parents[2] / "console"

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _files(root: Path) -> dict[str, Path]:
    """URL path below /ui/ → file, for every servable file under `root`."""
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in MEDIA_TYPES
    }


FILES = _files(CONSOLE_DIR)

router = APIRouter(tags=["console"], include_in_schema=False)


@router.get("/ui")
async def console_root() -> RedirectResponse:
    # Relative, so the redirect also works behind a proxy that mounts the relay under a prefix.
    return RedirectResponse("ui/", status_code=308, headers=HEADERS)


@router.api_route("/ui/{path:path}", methods=["GET", "HEAD"])
async def console_file(path: str) -> Response:
    found = FILES.get(path or "index.html")
    if found is None:
        return Response("Not Found", status_code=404, media_type="text/plain", headers=HEADERS)
    return FileResponse(found, media_type=MEDIA_TYPES[found.suffix], headers=HEADERS)

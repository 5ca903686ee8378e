"""Akool's push (SPEC §1, §7): app.akool_push decodes, app.sandbox.akool_push encodes.

The known-answer vectors below were made with the openssl and sha1sum command-line tools from the
documented algorithm, not with our code; each comment gives the exact command. Keys are the ASCII of
the secrets (`printf %s <secret> | od -An -tx1`), IVs the ASCII of the client id's first 16 bytes,
NUL-padded. Plaintexts are printed with `printf '%s'` (no trailing newline).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from app.akool_push import (
    BadSignature,
    MalformedPush,
    PushConfigError,
    PushKeys,
    PushNotice,
    decode_push,
    signature,
)
from app.sandbox.akool_push import encrypt_data, encrypt_push, push_signature

SHORT_ID = "akool-cid"  # 9 bytes: IV 616b6f6f6c2d636964 + 7 NUL bytes = 616b6f6f6c2d63696400000000000000
LONG_ID = "4f2a9c1e7b3d5a6f8e0c2b1d"  # 24 bytes: IV is its first 16 = 34663261396331653762336435613666
KEY16 = "0123456789abcdef"  # -K 30313233343536373839616263646566
KEY24 = "0123456789abcdefghijklmn"  # -K 303132333435363738396162636465666768696a6b6c6d6e
KEY32 = (
    "0123456789abcdefghijklmnopqrstuv"  # -K 303132333435363738396162636465666768696a6b6c6d6e6f70717273747576
)

P1 = '{"_id":"6654a1b2c3d4e5f600112233","status":3,"type":"video_translation","url":"https://cdn.example.com/out/6654a1b2.mp4"}'
P2 = '{"_id":"6654a1b2c3d4e5f600112244","status":2,"type":"video_translation","url":"","progress":40}'
P3 = '{"_id":"6654a1b2c3d4e5f600112255","video_status":4,"type":"video_translation","url":"","error_code":1015,"error_reason":"speech not detected"}'

# printf '%s' "$P1" | openssl enc -aes-128-cbc -K 30313233343536373839616263646566 \
#     -iv 616b6f6f6c2d63696400000000000000 -base64 -A
C1 = "yXqmd24AF3Ttjyra/vE3/i90QdUAYY67VC3yWnP54RUVxJlraLIrNmVZTpONr8HJ0shzP1Rs97X6StG3j2eB5parV/+hwRkPFtujyv09k0YTZH/m49PCVD/rUW7+qRhC+4TIyO5+y62UqnwWU5fx56Hpn3ioMa+tf7PE7aZGiXs="
# printf '%s' "$P2" | openssl enc -aes-192-cbc -K 303132333435363738396162636465666768696a6b6c6d6e \
#     -iv 34663261396331653762336435613666 -base64 -A
C2 = "Bde5l6tGQR0KuwsLCWkAsuHskxYbJD60/tzTxtutTRzVA/or6WAStz6iOnpQbnp5W/Eu3ma4Jw4szM0TvsZkY4gDGaGgGmMLRfG1kVb1NUpNrdS/NrZQgMXefGlkycbY"
# printf '%s' "$P3" | openssl enc -aes-256-cbc \
#     -K 303132333435363738396162636465666768696a6b6c6d6e6f70717273747576 \
#     -iv 616b6f6f6c2d63696400000000000000 -base64 -A
C3 = "MNHlpGjHF1MqkfEqtWNQkBbxOQAcxqCJS3uj6COTQZlANrYwBqi3jAyuJ1kpmZCFounDzyNT9KByhj3Q8NNOsD/k/T2QSt+95n3McZEzPDB3/9+qutelaLr4v+mcqoY7O32/arsecf6sCTDs2CpO+DTk4FljnJycuRaRAPV6wyo/tG8HtiInGPbl0jEdZJOJ"

# printf '%s\n' akool-cid 1716883200123 4821 "$C1" | LC_ALL=C sort | tr -d '\n' | sha1sum
SIG1 = "d6bb930a00bf63865878acef68898345d07d40c5"
# printf '%s\n' 4f2a9c1e7b3d5a6f8e0c2b1d 1716883200999 987654 "$C2" | LC_ALL=C sort | tr -d '\n' | sha1sum
SIG2 = "c35f6ced76dad4f475f6d4bbad4c85ae87a2173e"

# 16 bytes whose last byte is 0x00 (not PKCS#7), encrypted without padding:
# printf '{"_id":"abc"}\0\0\0' | openssl enc -aes-128-cbc -nopad -K 30313233343536373839616263646566 \
#     -iv 616b6f6f6c2d63696400000000000000 -base64 -A
BAD_PADDING = "X7ux49E8ClA7Ku3EeAPRXw=="
# printf '%s' 'not json at all' | openssl enc -aes-128-cbc -K 30313233343536373839616263646566 \
#     -iv 616b6f6f6c2d63696400000000000000 -base64 -A
NOT_JSON = "dfrar+A1mnf/7YeCZOMEBg=="
# printf '%s' '[1,2,3]' | openssl enc -aes-128-cbc (same -K / -iv) -base64 -A
ARRAY = "RhkLDMDiSgf3kpqwSIrZ0g=="
# printf '%s' '{"status":3,"url":"x"}' | openssl enc -aes-128-cbc (same -K / -iv) -base64 -A
NO_ID = "NlIJSWXyojWsoTwFWMqfgzeBuwvTWsz0pjQ6U1Eivog="
# printf '%s' '{"_id":"6654a1b2c3d4e5f600112266","status":"3","type":"video_translation","deduction_duration":20,"extra":{"a":1}}' \
#     | openssl enc -aes-128-cbc (same -K / -iv) -base64 -A
LENIENT = "yXqmd24AF3Ttjyra/vE3/oJJn2esgMZpvk9HKmWvKHLJBLdgKd7YweIy42yGJ3SzUxOhIh0nMVF6XoCnqd4K24mw2mus0kuWVclFunPs/yJSOQ+7qtkZlYGA96En4jreTFuXyGe1T7HE8ARrKi0/O9Ud/tfIPC29F6fd8rWdsgQ="

TS = 1716883200123
NONCE = 4821
KEYS = PushKeys.of(SHORT_ID, KEY16)


def _sha1_sorted(*parts: Any) -> str:
    """The documented signature, written here again so the tests depend on neither side's code."""
    return hashlib.sha1("".join(sorted(str(p) for p in parts)).encode()).hexdigest()


def _body(data_encrypt: str, client_id: str = SHORT_ID, ts: Any = TS, nonce: Any = NONCE) -> bytes:
    envelope = {
        "signature": _sha1_sorted(client_id, ts, nonce, data_encrypt),
        "dataEncrypt": data_encrypt,
        "timestamp": ts,
        "nonce": nonce,
    }
    return json.dumps(envelope).encode()


def _malformed_message(body: bytes, keys: PushKeys = KEYS) -> str:
    with pytest.raises(MalformedPush) as caught:
        keys.decode(body)
    return str(caught.value)


# -- known answers -----------------------------------------------------------------------------------


def test_signature_known_answers() -> None:
    assert signature(SHORT_ID, TS, NONCE, C1) == SIG1
    assert signature(SHORT_ID, str(TS), str(NONCE), C1) == SIG1  # numbers in str() form
    assert signature(LONG_ID, 1716883200999, 987654, C2) == SIG2
    assert push_signature(SHORT_ID, TS, NONCE, C1) == SIG1
    assert push_signature(LONG_ID, 1716883200999, 987654, C2) == SIG2
    assert _sha1_sorted(SHORT_ID, TS, NONCE, C1) == SIG1  # the test's own helper agrees too


def test_decrypts_known_answer_with_a_16_byte_key_and_a_short_client_id() -> None:
    body = json.dumps({"signature": SIG1, "dataEncrypt": C1, "timestamp": TS, "nonce": NONCE}).encode()
    notice = decode_push(body, SHORT_ID, KEY16)
    assert notice == PushNotice(
        video_model_id="6654a1b2c3d4e5f600112233",
        status=3,
        type="video_translation",
        url="https://cdn.example.com/out/6654a1b2.mp4",
        progress=None,
        error_code=None,
        error_reason=None,
        raw=json.loads(P1),
    )


def test_decrypts_known_answer_with_a_24_byte_key_and_a_long_client_id() -> None:
    body = json.dumps({"signature": SIG2, "dataEncrypt": C2, "timestamp": 1716883200999, "nonce": 987654})
    notice = decode_push(body.encode(), LONG_ID, KEY24)
    assert (notice.video_model_id, notice.status, notice.progress) == ("6654a1b2c3d4e5f600112244", 2, 40)
    assert notice.url is None  # "" counts as missing
    assert notice.raw == json.loads(P2)


def test_decrypts_known_answer_with_a_32_byte_key() -> None:
    notice = decode_push(_body(C3), SHORT_ID, KEY32)
    assert notice.video_model_id == "6654a1b2c3d4e5f600112255"
    assert notice.status == 4  # from video_status
    assert (notice.error_code, notice.error_reason) == (1015, "speech not detected")
    assert notice.raw == json.loads(P3)


@pytest.mark.parametrize(
    ("client_id", "secret", "plaintext", "ciphertext"),
    [(SHORT_ID, KEY16, P1, C1), (LONG_ID, KEY24, P2, C2), (SHORT_ID, KEY32, P3, C3)],
)
def test_the_simulator_encrypts_to_the_known_answers(
    client_id: str, secret: str, plaintext: str, ciphertext: str
) -> None:
    # The simulator writes compact JSON in key order, as JSON.stringify does: the same bytes as P1..P3.
    assert encrypt_data(json.loads(plaintext), client_id, secret) == ciphertext
    envelope = encrypt_push(json.loads(plaintext), client_id, secret, timestamp=TS, nonce=NONCE)
    assert envelope == {
        "signature": _sha1_sorted(client_id, TS, NONCE, ciphertext),
        "dataEncrypt": ciphertext,
        "timestamp": TS,
        "nonce": NONCE,
    }


# -- round trip with the simulator -------------------------------------------------------------------


@pytest.mark.parametrize("secret", [KEY16, KEY24, KEY32])
@pytest.mark.parametrize("client_id", [SHORT_ID, LONG_ID, "exactly16bytes!!", "ünïcode-id"])
def test_round_trip_with_the_simulator(client_id: str, secret: str) -> None:
    data = {"_id": "abc123", "status": 3, "type": "video_translation", "url": "https://x/y.mp4"}
    envelope = encrypt_push(data, client_id, secret)
    assert isinstance(envelope["timestamp"], int) and isinstance(envelope["nonce"], int)
    assert envelope["timestamp"] > 1_600_000_000_000  # epoch milliseconds
    notice = PushKeys.of(client_id, secret).decode(json.dumps(envelope).encode())
    assert (notice.video_model_id, notice.status, notice.url) == ("abc123", 3, "https://x/y.mp4")
    assert notice.raw == data


# -- rejections --------------------------------------------------------------------------------------


def test_wrong_signature_is_bad_signature() -> None:
    envelope = encrypt_push({"_id": "abc", "status": 3}, SHORT_ID, KEY16)
    for forged in ("0" * 40, envelope["signature"].upper(), "", "é"):
        with pytest.raises(BadSignature):
            KEYS.decode(json.dumps({**envelope, "signature": forged}).encode())
    for changed in ({"timestamp": envelope["timestamp"] + 1}, {"nonce": envelope["nonce"] + 1}):
        with pytest.raises(BadSignature):
            KEYS.decode(json.dumps({**envelope, **changed}).encode())
    with pytest.raises(BadSignature):  # signed for another client id
        KEYS.decode(_body(C1, client_id="someone-else"))


def test_signature_is_checked_before_decrypting() -> None:
    body = {"signature": "0" * 40, "dataEncrypt": "%%% not base64 %%%", "timestamp": TS, "nonce": NONCE}
    with pytest.raises(BadSignature):
        KEYS.decode(json.dumps(body).encode())


def test_tampered_ciphertext_with_a_recomputed_signature_is_malformed() -> None:
    raw = bytearray(base64.b64decode(C1))
    raw[0] ^= 0x01  # garbles plaintext block 0 entirely; the padding in the last block is untouched
    tampered = base64.b64encode(bytes(raw)).decode()
    assert _malformed_message(_body(tampered)) == _malformed_message(_body(NOT_JSON))


def test_bad_padding_gives_the_same_message_as_not_json() -> None:
    messages = {
        _malformed_message(_body(BAD_PADDING)),
        _malformed_message(_body(NOT_JSON)),
        _malformed_message(_body(ARRAY)),
        _malformed_message(_body(NO_ID)),
        _malformed_message(_body(C1[:-24] + "=")),  # not base64 any more
        _malformed_message(_body(base64.b64encode(base64.b64decode(C1)[:-3]).decode())),  # not whole blocks
        _malformed_message(_body("")),
        _malformed_message(b"not json"),
    }
    assert len(messages) == 1
    # and the key is right: the same ciphertexts with a wrong key also fail, identically
    assert _malformed_message(_body(C1), PushKeys.of(SHORT_ID, KEY32)) in messages


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b'"a string"',
        b"[" * 100_000,
        json.dumps({"signature": SIG1, "dataEncrypt": C1, "timestamp": TS}).encode(),  # no nonce
        json.dumps({"dataEncrypt": C1, "timestamp": TS, "nonce": NONCE}).encode(),  # no signature
        json.dumps({"signature": SIG1, "timestamp": TS, "nonce": NONCE}).encode(),  # no dataEncrypt
        json.dumps({"signature": SIG1, "dataEncrypt": C1, "nonce": NONCE}).encode(),  # no timestamp
        json.dumps({"signature": SIG1, "dataEncrypt": 5, "timestamp": TS, "nonce": NONCE}).encode(),
        json.dumps({"signature": None, "dataEncrypt": C1, "timestamp": TS, "nonce": NONCE}).encode(),
        json.dumps({"signature": SIG1, "dataEncrypt": C1, "timestamp": [TS], "nonce": NONCE}).encode(),
        json.dumps({"signature": SIG1, "dataEncrypt": C1, "timestamp": TS, "nonce": True}).encode(),
    ],
)
def test_not_the_envelope_is_malformed(body: bytes) -> None:
    assert _malformed_message(body) == _malformed_message(_body(BAD_PADDING))


def test_non_base64_data_is_malformed() -> None:
    for data in ("@@@@", "yXqm d24A", "yXqmd24AF3Ttjyra/vE3/i90QdU", "é", C1.replace("/", "_")):
        with pytest.raises(MalformedPush):
            KEYS.decode(_body(data))


@pytest.mark.parametrize(
    "secret", ["", "short", "0123456789abcde", "0123456789abcdef0", "0123456789abcdéf", "x" * 33]
)
def test_a_bad_key_length_fails_at_construction(secret: str) -> None:
    with pytest.raises(PushConfigError) as caught:
        PushKeys.of(SHORT_ID, secret)
    assert isinstance(caught.value, ValueError)
    assert secret not in str(caught.value) or not secret  # the secret itself is never shown
    with pytest.raises(PushConfigError):
        decode_push(_body(C1), SHORT_ID, secret)


def test_an_empty_client_id_fails_at_construction() -> None:
    with pytest.raises(PushConfigError):
        PushKeys.of("", KEY16)


# -- lenient parsing ---------------------------------------------------------------------------------


def test_lenient_known_answer_status_as_a_string_extra_fields_and_no_url() -> None:
    notice = KEYS.decode(_body(LENIENT))
    assert notice.video_model_id == "6654a1b2c3d4e5f600112266"
    assert notice.status == 3
    assert notice.url is None and notice.progress is None and notice.error_code is None
    assert notice.raw["deduction_duration"] == 20 and notice.raw["extra"] == {"a": 1}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"_id": "a", "status": "3"}, 3),
        ({"_id": "a", "status": 2, "video_status": 3}, 2),  # status wins
        ({"_id": "a", "video_status": "4"}, 4),
        ({"_id": "a", "status": "soon", "video_status": 2}, 2),  # an unreadable status falls back
        ({"_id": "a", "status": None}, None),
        ({"_id": "a", "status": True}, None),
        ({"_id": "a"}, None),
    ],
)
def test_status_is_read_leniently(data: dict[str, Any], expected: int | None) -> None:
    notice = KEYS.decode(json.dumps(encrypt_push(data, SHORT_ID, KEY16)).encode())
    assert notice.status == expected


def test_other_fields_are_read_leniently() -> None:
    data = {"_id": 12345, "type": 2, "url": None, "progress": "40", "error_code": "1015", "error_reason": ""}
    notice = KEYS.decode(json.dumps(encrypt_push(data, SHORT_ID, KEY16)).encode())
    assert notice.video_model_id == "12345"
    assert (notice.type, notice.url, notice.progress) == ("2", None, 40)
    assert (notice.error_code, notice.error_reason) == (1015, None)
    assert notice.raw == data


@pytest.mark.parametrize("bad_id", [None, "", [], {}, True])
def test_a_notice_without_a_usable_id_is_malformed(bad_id: Any) -> None:
    body = json.dumps(encrypt_push({"_id": bad_id, "status": 3}, SHORT_ID, KEY16)).encode()
    assert _malformed_message(body) == _malformed_message(_body(BAD_PADDING))


def test_the_notice_is_frozen() -> None:
    notice = KEYS.decode(_body(C1))
    with pytest.raises(AttributeError):
        notice.status = 4  # type: ignore[misc]


def test_the_simulator_side_imports_nothing_from_the_relay() -> None:
    import ast
    from pathlib import Path

    import app.sandbox.akool_push as encoder

    tree = ast.parse(Path(encoder.__file__).read_text())
    modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    relay = [m for m in modules if (m == "app" or m.startswith("app.")) and not m.startswith("app.sandbox")]
    assert relay == []

"""Every SQL statement of the product, by table or concern. Callers get typed values back, never build SQL."""

"""Visitors' flags: what they say the model got wrong, kept in a database, pulled back into the data.

`rules` is what a flag may hold (the page shares it), `store` is the database (SQLite by default,
PostgreSQL when given its URL), `pull` writes flagged photos out as a folder per visitor label with
their provenance, `stats` sums them up for the maintainer.
"""

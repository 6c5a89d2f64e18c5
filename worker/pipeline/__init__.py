"""The path of one record: fetch, batch, decode, write with its offset,
dead letters."""

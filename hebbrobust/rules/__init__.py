"""Local learning rules. `krotov` is the Krotov-Hopfield rule; `_base.LocalRule` documents the protocol."""

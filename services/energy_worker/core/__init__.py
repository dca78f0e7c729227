"""The pure core: keys, domain types, meter arithmetic, history, ledger, totals. No I/O,
no logging, no import from another layer."""

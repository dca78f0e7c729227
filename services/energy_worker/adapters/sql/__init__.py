"""All SQL that reads or writes data, one module per owner (the schema is the numbered
migrations in services/energy_worker/adapters/sql/migrations/, run by the set-up):

| module                | used by                                                        |
|-----------------------|----------------------------------------------------------------|
| store.meters          | the set-up and every program: the meter config in the database |
| store.processor       | the processor: history, meter state, exactly-once bookkeeping  |
| store.pusher          | the pusher: totals, the push outbox, its own state             |
| store.publisher       | the MQTT publisher: the committed meters, the installation id  |
| store.reports         | the `energy-worker` command: what `status` shows               |

Batches go as arrays through unnest(), so one statement writes any number of rows.
"""

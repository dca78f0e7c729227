"""energy-worker: turns S0 meter pulses from Redis into exact energy and power history."""

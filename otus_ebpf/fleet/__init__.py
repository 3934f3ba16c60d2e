"""Fleet operation over Kafka: signed commands, answers and heartbeats (docs/FLEET.md)."""

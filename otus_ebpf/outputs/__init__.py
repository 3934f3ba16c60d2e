"""Outputs: the record reporters behind their queues, the files, Kafka's producer and
HEP's transports they write to."""

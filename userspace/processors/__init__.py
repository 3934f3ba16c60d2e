"""What happens to records between the pipeline and the outputs: an ordered
chain of processors per task — filter, label, redact, sample, and plugins'
(docs/PROCESSORS.md, docs/PLUGINS.md)."""

"""The Avro wire format: the event and CDR codec, and its compiled encoders."""

"""The process around the work: settings, logging and GC tuning, set up by entry points."""

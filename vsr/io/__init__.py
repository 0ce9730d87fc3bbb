"""Video input and output: decoding sources, encoding sinks, stream passthrough."""

"""The socket edge: SCP, SCU and the acceptor (no analysis, no decoding on the association thread)."""

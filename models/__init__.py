"""Training code and shipped model files of dopanode (torch lives here, not in service/)."""

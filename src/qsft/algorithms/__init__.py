"""Pure loss and target functions (torch only: no files, configs or environments)."""

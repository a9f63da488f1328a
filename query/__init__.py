"""vistag's read side: text encoding, search, tagging, propagation, export."""

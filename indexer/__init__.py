"""vistag's persistent state: the SQL catalog, FAISS index versions and the kNN graph."""

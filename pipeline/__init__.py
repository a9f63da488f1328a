"""vistag's Beam job: image files to embedding shards. Knows nothing about SQL or FAISS."""

"""``python -m pipeline --inputs ... --output SHARDS [beam options]``: run the embedding job alone."""

from pipeline.job import run

if __name__ == "__main__":
    run()

"""The build worker agent: run the builds a pool hands out."""

"""The build-client command line: submit builds, inspect and administer pools."""

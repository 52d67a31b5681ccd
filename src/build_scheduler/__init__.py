"""The build scheduler daemon: pools, queues, and the services around them."""

"""Jobs: the message format of one email to send, and the daemon's intake of those messages."""

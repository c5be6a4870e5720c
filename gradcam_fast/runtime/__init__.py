"""Running an exported model: the session, its backends, and the int8 models it makes."""

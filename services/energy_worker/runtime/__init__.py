"""How a program starts and ends, and supervisord's side: supervision and the exit
listener plugin."""

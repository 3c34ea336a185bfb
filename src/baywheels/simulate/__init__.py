"""``baywheels simulate``: a day of a bike-share against a running service (``day.py``), in a made-up world
(``world.py``)."""

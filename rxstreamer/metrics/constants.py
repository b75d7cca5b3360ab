"""Where things are served and the histograms' buckets."""

from typing import Final

#: Where each thing is served; any other path answers 404 naming these.
PATHS: Final = ("/metrics", "/healthz", "/readyz")
#: Bucket bounds (seconds) of ``rxstreamer_publish_duration_seconds``: a local queue answers in about a
#: millisecond; ``message_queue.publish_timeout`` is 5 s by default.
PUBLISH_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Bucket bounds (seconds) of ``rxstreamer_pacing_lateness_seconds``: a tick is normally late by well under
#: a millisecond; one that waited for a slow publish is late by up to one interval (then pacing restarts).
LATENESS_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The shortest wait for an acknowledgement that makes the stream count as stalled (see ``stall_after``).
MIN_STALL_S: Final = 1.0

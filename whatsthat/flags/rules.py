"""What a visitor's flag may hold: the words the page and the store must agree on.

Its own module, with nothing but constants, so the page kernel (whatsthat.web.flagform) and the request
channel (whatsthat.web.protocol) read them without importing the store, its database drivers and sqlite3.
"""

NONE_OF_THESE = "none of these"  # the visitor's label for a photo of none of the model's classes
MAX_TEXT = 50  # characters of the visitor's own words
MAX_PHOTO_SIDE = 512  # px, the longer side of a photo kept with the visitor's consent

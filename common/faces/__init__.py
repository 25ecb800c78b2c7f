"""The one face path: decoding, face detection, key points and crops, the views, extraction
and its worker pool, the face cache, the crop preview.

Imports `common.data` and the top-level base modules, nothing above.
"""

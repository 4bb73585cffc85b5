"""DICOM whole-slide images: finding a slide's series among ``.dcm`` files (``series``) and writing
results back as DICOM objects that reference it (``outputs``: Segmentation, Bulk Annotations).

Reading pixels is the slide backends' job (``wsipipe.slide``: openslide, then wsidicom); this
package only reads headers, so discovery and checks stay cheap on big archives.
"""

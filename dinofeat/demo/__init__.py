"""``dinofeat demo``: a local web page showing what a model sees in one image.

Starlette routes (:mod:`dinofeat.demo.app`) serve one static page (``static/``) and a small JSON
API; :mod:`dinofeat.demo.rendering` turns the dense features into PNGs, :mod:`dinofeat.demo.models`
loads zoo models in the background, :mod:`dinofeat.demo.uploads` decodes uploads safely and
:mod:`dinofeat.demo.server` runs uvicorn on a bound socket. Needs the ``[demo]`` extra.
"""

from dinofeat.demo.app import DemoSettings, create_app
from dinofeat.demo.server import DemoServer

__all__ = ["DemoServer", "DemoSettings", "create_app"]

"""The synthetic streamer: a stand-in for a UE Pixel Streaming build, run as a slot's process.

``synthetic`` speaks the streamer side of signalling over aiortc, ``pattern`` draws the
live test picture, ``input_messages`` decodes the frontend's input data channel and
``ice`` turns signalling's ICE messages into aiortc objects.
"""

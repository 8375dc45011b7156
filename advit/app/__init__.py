"""The app's logic without its layout: views, forms, the models on offer, rendering.

The only package that imports gradio, plotly or matplotlib (``tests/test_layers.py`` holds the boundary).
"""

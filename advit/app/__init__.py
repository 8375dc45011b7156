"""The app's logic without its layout: views, forms, the models on offer, rendering; the only package that imports gradio, plotly or matplotlib."""

"""Stage 7, output: recordings and results → HTML pages, LSTMVis folders, pictures.

``render`` colours text by a cell (HTML, escaped); ``export`` writes an LSTMVis project;
``browser`` drives a headless Chromium to serve and screenshot the dashboard.
"""

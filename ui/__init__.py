"""The Streamlit web app: `app.py` (navigation) and one page per module in `views/`."""

"""The Streamlit web app (issue: web app and compose stack)."""

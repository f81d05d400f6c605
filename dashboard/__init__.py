"""The Streamlit dashboard that `faultstream dashboard` serves."""

# How `faultstream dashboard` tells the app which history to show; kept here rather than in
# data.py so the command line sets them without importing Streamlit.
DB_ENV = "FAULTSTREAM_DASHBOARD_DB"
READ_MODELS_ENV = "FAULTSTREAM_DASHBOARD_READ_MODELS"

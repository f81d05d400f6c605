"""The Streamlit entry point: `faultstream dashboard` runs `streamlit run` on this file."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="faultstream", page_icon=":material/monitor_heart:", layout="wide")

PAGES = [
    st.Page(
        "screens/overview.py",
        title="Overview",
        icon=":material/dashboard:",
        url_path="overview",
        default=True,
    ),
    st.Page(
        "screens/circuits.py",
        title="Circuits",
        icon=":material/electric_bolt:",
        url_path="circuit-breakers",
    ),
    st.Page("screens/failures.py", title="Failures", icon=":material/error:", url_path="failures"),
    st.Page(
        "screens/recovery.py", title="Recovery", icon=":material/healing:", url_path="recovery"
    ),
    st.Page("screens/workers.py", title="Workers", icon=":material/dns:", url_path="workers"),
    st.Page(
        "screens/timetravel.py",
        title="Time travel",
        icon=":material/history:",
        url_path="time-travel",
    ),
    st.Page("screens/tuning.py", title="Tuning", icon=":material/tune:", url_path="tuning"),
    st.Page(
        "screens/operate.py", title="Operations", icon=":material/build:", url_path="operations"
    ),
]

st.navigation(PAGES).run()

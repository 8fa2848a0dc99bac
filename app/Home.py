"""The twoview app: `streamlit run app/Home.py` (or `twoview app`). This file only declares the pages.

The pages live in `screens/`, not `pages/`: Streamlit would also auto-list a `pages/` folder, and a deep
link (e.g. /batch) to a freshly started server then opens that page without this navigation.
"""

import streamlit as st

from app import common

st.set_page_config(page_title="twoview", page_icon=":material/radiology:", layout="wide")
with st.sidebar:
    st.markdown(f"### {common.APP_NAME}")
    st.caption(common.APP_LINE)
    st.caption(common.model_line(common.active_model()))
pages = [
    st.Page("screens/predict.py", title="Predict", icon=":material/radiology:", default=True),
    st.Page("screens/batch.py", title="Batch", icon=":material/folder_open:"),
    st.Page("screens/finetune.py", title="Fine-tune", icon=":material/model_training:"),
    st.Page("screens/model.py", title="Model", icon=":material/neurology:"),
]
st.navigation(pages).run()

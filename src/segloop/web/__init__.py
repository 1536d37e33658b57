"""The web side: run report templates and charts, and the `segloop ui` app.

The app (``segloop.web.app``) holds no logic of its own: every page calls the Pipeline
facade or the RunStore, as the CLI does. Importing this package stays cheap; Starlette is
imported only by the app module.
"""

from faultstream.dashboard.views import overview

overview.render()

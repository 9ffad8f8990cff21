"""HTTP headers of Knative Serving's data path.

The gateway sets (overwrites) the namespace and revision headers on each split, so the
activator knows which revision a request is for; a client cannot choose them. The tag
headers are Knative's `tag-header-based-routing` feature.
"""

NAMESPACE_HEADER = "Knative-Serving-Namespace"
REVISION_HEADER = "Knative-Serving-Revision"
TAG_HEADER = "Knative-Serving-Tag"
DEFAULT_ROUTE_HEADER = "Knative-Serving-Default-Route"

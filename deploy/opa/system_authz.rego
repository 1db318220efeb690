# OPA's own API authorization (opa run --authentication=token --authorization=basic): only
# callers presenting the token from OPA's environment may query it. The token is never in the repo.
package system.authz

import rego.v1

default allow := false

allow if {
	input.identity == opa.runtime().env.OPA_API_TOKEN
}

# Health checks from the container runtime need no token.
allow if {
	input.path == ["health"]
}

# OPA's own API authorization (opa run --authentication=token --authorization=basic). OPA puts
# every request to data.system.authz.allow with input {method, path (segments), params, headers,
# identity (the bearer token, when one was sent), body (of a data POST)}.
#
# - GET /health is open: the container runtime's health check sends no token.
# - The bot, presenting the token from OPA's environment (OPA_API_TOKEN, never in the repo), may
#   ask for decisions: POST /v1/data/playbook/authz/<rule>. That is all it needs.
# - Nothing else is allowed, to the token's holder either: writing or deleting data or policies
#   (a leaked token must not rewrite the policy it is checked by, nor add itself to a group or
#   lift a freeze), reading policies, data, configuration or status, ad-hoc queries.
#
# Tested by tests/policy/test_system_authz.py.
package system.authz

import rego.v1

default allow := false

allow if {
	input.method == "GET"
	input.path == ["health"]
}

allow if {
	input.method == "POST"
	count(input.path) == 5
	input.path[0] == "v1"
	input.path[1] == "data"
	input.path[2] == "playbook"
	input.path[3] == "authz"
	input.path[4] != ""
	_bot
}

# The bearer token OPA took from the request is the one in its environment (an unset or empty
# variable matches nothing).
_bot if {
	token := opa.runtime().env.OPA_API_TOKEN
	is_string(token)
	token != ""
	input.identity == token
}

"""mooc-chassis: the Dapr-native chassis every MOOC service is built on."""

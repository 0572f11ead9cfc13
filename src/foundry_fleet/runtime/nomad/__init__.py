"""The nomad runtime: instances as Nomad service jobs, provisioning as a parameterized job."""

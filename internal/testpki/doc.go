// Package testpki is a throwaway certificate authority for tests: a CA valid
// for the hour around now, and leaf certificates it signs for 127.0.0.1. Only
// tests import it.
package testpki

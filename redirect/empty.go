package redirect

import (
	"bytes"

	"sigs.k8s.io/yaml"
)

// EmptyDocument reports whether doc holds no setting at all: nothing but
// white space, comments, document markers or a bare null. A config file like
// that is almost always a template or a copy that went wrong, so the commands
// that read one refuse it instead of taking it as "the defaults" (`{}` says
// the defaults on purpose and is not empty). A document that does not parse
// is not empty: Decode reports it.
func EmptyDocument(doc []byte) bool {
	if len(bytes.TrimSpace(doc)) == 0 {
		return true
	}
	js, err := yaml.YAMLToJSON(doc)
	return err == nil && string(bytes.TrimSpace(js)) == "null"
}

package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// A services file is read whole, every document of it, and refused as a
// whole when any part is wrong or when it holds no service at all.
func TestDecodeServices(t *testing.T) {
	const (
		a  = "{name: a, clusterIP: 10.96.0.1, ports: [{port: 80}]}"
		b  = "{name: b, clusterIP: 10.96.0.2, ports: [{port: 80}]}"
		ja = `{"name": "a", "clusterIP": "10.96.0.1", "ports": [{"port": 80}]}`
		jb = `{"name": "b", "clusterIP": "10.96.0.2", "ports": [{"port": 80}]}`
	)
	for _, tc := range []struct {
		name, in   string
		allowEmpty bool
		want       []string // namespace/name of each service, in order
		err        string   // a part of the error; "" for none
	}{
		{name: "list", in: "[" + a + ", " + b + "]", want: []string{"default/a", "default/b"}},
		{name: "services object", in: "services:\n- " + a + "\n- " + b + "\n", want: []string{"default/a", "default/b"}},
		{name: "two YAML documents", in: "services: [" + a + "]\n---\n- " + b + "\n", want: []string{"default/a", "default/b"}},
		{name: "three YAML documents", in: "- " + a + "\n---\n- " + b + "\n---\n- {name: c, namespace: x, clusterIP: 10.96.0.3, ports: [{port: 80}]}\n",
			want: []string{"default/a", "default/b", "x/c"}},
		{name: "leading separator, header comment, trailing separator",
			in: "# services of this node\n---\n- " + a + "\n---\n- " + b + "\n---\n", want: []string{"default/a", "default/b"}},
		{name: "separator with a comment", in: "- " + a + "\n--- # the next one\n- " + b + "\n", want: []string{"default/a", "default/b"}},
		{name: "JSON", in: "[" + ja + "," + jb + "]", want: []string{"default/a", "default/b"}},
		{name: "JSON stream", in: `{"services": [` + ja + "]}\n[" + jb + "]\n", want: []string{"default/a", "default/b"}},
		{name: "JSON stream without separators", in: "[" + ja + "][" + jb + "]", want: []string{"default/a", "default/b"}},

		{name: "empty", in: "", err: "no services"},
		{name: "whitespace", in: " \n\t\n", err: "no services"},
		{name: "comments", in: "# nothing yet\n  # really\n", err: "no services"},
		{name: "null", in: "null\n", err: "no services"},
		{name: "tilde", in: "~\n", err: "no services"},
		{name: "empty object", in: "{}", err: "no services"},
		{name: "empty list", in: "[]", err: "no services"},
		{name: "empty services", in: "services: []\n", err: "no services"},
		{name: "null services", in: "services:\n", err: "no services"},
		{name: "separators only", in: "---\n---\n", err: "no services"},
		{name: "JSON null", in: "null", err: "no services"},
		{name: "JSON stream of empties", in: "{}\n[]\n", err: "document 1: no services"},
		{name: "a document without services", in: "- " + a + "\n---\n{}\n---\n- " + b + "\n", err: "document 2: no services"},
		{name: "a null document", in: "- " + a + "\n---\nnull\n", err: "document 2: no services"},

		{name: "empty allowed", in: "", allowEmpty: true},
		{name: "null allowed", in: "null", allowEmpty: true},
		{name: "empty object allowed", in: "{}", allowEmpty: true},
		{name: "empty document allowed", in: "- " + a + "\n---\nservices: []\n", allowEmpty: true, want: []string{"default/a"}},

		{name: "twice across documents", in: "- " + a + "\n---\n- " + b + "\n---\n- " + a + "\n",
			err: "document 3: service default/a is defined twice (also in document 1)"},
		{name: "twice, namespace defaulted", in: "- " + a + "\n---\n- {name: a, namespace: default, clusterIP: 10.96.0.9, ports: [{port: 80}]}\n",
			err: "document 2: service default/a is defined twice"},
		{name: "twice in one document", in: "[" + a + ", " + a + "]", err: "service default/a is defined twice"},
		{name: "twice in a JSON stream", in: "[" + ja + "]\n[" + ja + "]", err: "document 2: service default/a is defined twice"},
		{name: "same name, other namespace", in: "- " + a + "\n---\n- {name: a, namespace: x, clusterIP: 10.96.0.9, ports: [{port: 80}]}\n",
			want: []string{"default/a", "x/a"}},

		{name: "unknown field", in: "[{name: a, colour: blue}]", err: `unknown field "colour"`},
		{name: "unknown field in a later document", in: "- " + a + "\n---\n- {name: b, colour: blue}\n", err: `document 2: json: unknown field "colour"`},
		{name: "unknown top-level field", in: "services: [" + a + "]\nextra: 1\n", err: `unknown field "extra"`},
		{name: "unknown port field", in: "[{name: a, ports: [{port: 80, prot: UDP}]}]", err: `unknown field "prot"`},
		{name: "unknown backend field", in: "[{name: a, backends: [{ip: 10.0.0.1, redy: false}]}]", err: `unknown field "redy"`},
		{name: "unknown field in a JSON stream", in: "[" + ja + "]\n[{\"name\": \"b\", \"colour\": \"blue\"}]", err: `document 2: json: unknown field "colour"`},
		{name: "duplicate key", in: "[{name: a, name: b}]", err: "already set"},
		{name: "not YAML", in: "- " + a + "\n---\n[unclosed\n", err: "document 2: yaml: line 1"},
		{name: "text after a separator", in: "- " + a + "\n--- b\n", err: "invalid Yaml document separator"},
		{name: "a scalar", in: "42", err: "cannot unmarshal number"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svcs, err := decodeServices([]byte(tc.in), tc.allowEmpty)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one saying %q", err, tc.err)
				}
				if svcs != nil {
					t.Fatalf("services returned with the error: %+v", svcs)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, s := range svcs {
				if s.Namespace == "" {
					s.Namespace = "default"
				}
				got = append(got, s.Key())
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("services %v, want %v", got, tc.want)
			}
		})
	}
}

// The refusal of an empty input says how to mean it.
func TestDecodeServicesEmptySaysHow(t *testing.T) {
	_, err := decodeServices(nil, false)
	if !errors.Is(err, errNoServices) || !strings.Contains(err.Error(), "--allow-empty") {
		t.Fatalf("error %v, want errNoServices naming --allow-empty", err)
	}
}

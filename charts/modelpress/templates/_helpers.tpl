{{/* Names, labels and the RBAC rules shared by the Role and ClusterRole templates. */}}

{{- define "modelpress.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelpress.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "modelpress.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelpress.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "modelpress.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "modelpress.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: modelpress
{{- end -}}

{{- define "modelpress.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelpress.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository[:tag][@digest]; tag defaults to the chart's appVersion. */}}
{{- define "modelpress.imageRef" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
What the operator calls in a namespace where CompressedModels live: each rule is one
call site (operator/handlers.py via operator/kube.py, or kopf's watches). Checked
against every request the operator makes in tests/packaging/test_rbac.py.
*/}}
{{- define "modelpress.namespacedRules" -}}
- apiGroups: [modelpress.io]
  resources: [compressedmodels]
  verbs: [get, list, watch]
- apiGroups: [modelpress.io]
  resources: [compressedmodels/status]
  verbs: [patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [create, get, list, watch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, get]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
{{- if .Values.rbac.kserve }}
- apiGroups: [serving.kserve.io]
  resources: [inferenceservices]
  verbs: [create, get, patch, delete]
{{- end }}
{{- end -}}

{{/* kopf peering: watch the peering objects, patch only our own. */}}
{{- define "modelpress.peeringRules" -}}
{{- $resource := ternary "clusterkopfpeerings" "kopfpeerings" (empty .Values.watchNamespaces) -}}
- apiGroups: [kopf.dev]
  resources: [{{ $resource }}]
  verbs: [list, watch]
- apiGroups: [kopf.dev]
  resources: [{{ $resource }}]
  resourceNames: [{{ .Values.peering.name | quote }}]
  verbs: [patch]
{{- end -}}

{{/*
kopf's cluster observation (settings.scanning): it watches CRDs to notice new resource
kinds and, when watching a namespace list, lists/watches Namespaces. Without these kopf
still runs, with warnings; rbac.kopfScanning=false drops them (pair it with
settings.scanning.disabled in the operator).
*/}}
{{- define "modelpress.scanningRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- if .Values.watchNamespaces }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- end -}}

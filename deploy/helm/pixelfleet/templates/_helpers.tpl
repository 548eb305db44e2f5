{{- define "pixelfleet.labels" -}}
app.kubernetes.io/name: pixelfleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "pixelfleet.selector" -}}
app.kubernetes.io/name: pixelfleet
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "pixelfleet.secretName" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-pixelfleet" .Release.Name) -}}
{{- end }}

{{/* env entries from the Secret: (dict "root" $ "keys" (list (list "PIXELFLEET_X" "key") ...)) */}}
{{- define "pixelfleet.secretEnv" -}}
{{- range .keys }}
- name: {{ index . 0 }}
  valueFrom:
    secretKeyRef:
      name: {{ include "pixelfleet.secretName" $.root }}
      key: {{ index . 1 }}
      optional: {{ index . 2 }}
{{- end }}
{{- end }}
